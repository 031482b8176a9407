"""gpurnn: recurrent networks trained with backpropagation through time, on NVIDIA GPUs through
custom Numba CUDA kernels and on any CPU through a Numba fallback.

``gpurnn.torch`` (imported on its own; it needs torch) holds RNN, LSTM and GRU as torch.nn modules
on the same kernels."""

try:
    from . import kernels as _kernels  # noqa: F401  (kernels/ is installed as gpurnn.kernels)
except ImportError as e:
    import importlib.util as _util
    import os as _os

    if _util.find_spec(__name__ + ".kernels") is not None:
        raise                   # gpurnn.kernels exists and failed for its own reason (a dependency)
    raise ImportError(
        f"gpurnn.kernels was not found: Python imported gpurnn from {_os.path.dirname(__file__)}, a source "
        "checkout whose kernels/ folder only becomes gpurnn.kernels when installed (the current folder "
        "comes first on Python's path). Run from outside the checkout, or install it editable: "
        "`python -m pip install -e .` in the checkout.") from e

from .backend import BACKENDS, cuda_status, get_backend
from .layers import GRU, LSTM, RNN, Linear, Module
from .losses import cross_entropy, mse_loss
from .optim import SGD, Adam, clip_grad_norm, clip_grad_value
from .model import Embedding, NonFiniteError, SequenceModel, Trainer, make_model
from .tasks import make_task
from .data import ArrayTask, DataError
from .datafiles import task_from_file
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .predict import TrainedModel, load_model

__version__ = "0.1.0"

__all__ = [
    "RNN", "LSTM", "GRU", "Linear", "Module",
    "mse_loss", "cross_entropy",
    "SGD", "Adam", "clip_grad_norm", "clip_grad_value",
    "get_backend", "cuda_status", "BACKENDS",
    "SequenceModel", "Trainer", "Embedding", "NonFiniteError", "make_model", "make_task",
    "ArrayTask", "DataError", "task_from_file", "load_model", "TrainedModel",
    "save_checkpoint", "load_checkpoint", "CheckpointError",
]
