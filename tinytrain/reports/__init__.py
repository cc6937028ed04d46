"""Reading a sweep back: statistics over seeds (scipy), the compare table, the loss curves, the UI summary."""
