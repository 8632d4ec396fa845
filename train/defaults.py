"""qd-train's names that its --help shows, torch-free so the help prints without loading torch.

train/models.py builds its ARCHITECTURES table from these names (and checks they agree)."""

ARCH_NAMES = ("seed", "compact")
DEFAULT_ARCH = "compact"
