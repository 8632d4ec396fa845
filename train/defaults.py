"""qd-train's names that its --help shows, torch-free so the help prints without loading torch.

train/models.py builds its ARCHITECTURES table from these names (and checks they agree). The other
defaults of a run are TrainConfig's (train/config.py, torch-free too), which qd-train's options read."""

ARCH_NAMES = ("seed", "compact")
DEFAULT_ARCH = "compact"
PRECISIONS = ("auto", "fp32", "bf16")  # qd.train.compute runs them

# Small-data defaults: a run adapts its batch size and epochs to the data (docs/training.md).
DEFAULT_EPOCHS = 10            # the fewest epochs a run gets by default
MAX_BATCH_SIZE = 256           # the default batch size once the data is large enough
MIN_BATCH_SIZE = 32
MIN_STEPS_PER_EPOCH = 50       # the default batch halves (down to MIN_BATCH_SIZE) until an epoch has this many steps
MIN_STEPS = 1000               # epochs rise above DEFAULT_EPOCHS until the run has this many steps
MAX_AUTO_EPOCHS = 200
DEFAULT_PATIENCE = 5           # the fewest epochs without improvement before stopping early by default
