"""The pickle module that tinytrain's LoggedModels name (data/pickle_module_info.txt): pickle's interface, with
an Unpickler that gives back the LeNet of a state dict (model_files.py says how and why).

Keep this module's name and place: every store written since it exists names it in its models, and
`mlflow.pytorch.load_model` imports it by that name.
"""

from pickle import *  # noqa: F403 - torch uses a pickle module's whole interface (dump, load, Pickler, ...)

from tinytrain.tracking.model_files import LeNetUnpickler as Unpickler  # noqa: F401
