"""The problems and losses an experiment can name, as plain data (spec validation and `--dry-run` need no
torch); the problems themselves live in tinytrain/problems/, one module each."""

PROBLEMS = {"one-sample": "tinytrain.problems.one_sample", "digits": "tinytrain.problems.digits"}
LOSSES = ("mse", "cross_entropy")  # mse: against the one-hot of the label (the blog's); cross_entropy: the label
TEST_METRICS = ("test_loss", "test_accuracy")  # what a problem with a test set measures on it
DIGITS_TRAINING_IMAGES = 1437  # 80 % of load_digits' 1,797, stratified (problems/digits.py): the largest batch
