"""afinar: self-hosted model customization (fine-tuning, evaluation, serving) on your own machine."""

__version__ = "0.1.0"
