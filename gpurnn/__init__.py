"""gpurnn: recurrent networks trained with backpropagation through time, on NVIDIA GPUs through
custom Numba CUDA kernels and on any CPU through a Numba fallback.

``gpurnn.torch`` (imported on its own; it needs torch) holds RNN, LSTM and GRU as torch.nn modules
on the same kernels."""

from . import _checkout  # noqa: F401  (first: it makes gpurnn.kernels this checkout's kernels/)
from . import kernels  # noqa: F401  (the package of every kernel: the library imports it, never the reverse)
from .backend import BACKENDS, BackendUnavailable, cuda_status, get_backend
from .layers import GRU, LSTM, RNN, Linear, Module
from .losses import cross_entropy, mse_loss
from .optim import SGD, Adam, clip_grad_norm, clip_grad_value
from .model import Embedding, NonFiniteError, SequenceModel, Trainer, make_model
from .tasks import make_task
from .data import ArrayTask, DataError
from .datafiles import task_from_file
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .predict import TrainedModel, load_model
from .runs import ConfigError, MemoryTooSmall, RunBusy
from .training import AlreadyFinished, RunResult, fit

__version__ = "0.1.0"

__all__ = [
    "RNN", "LSTM", "GRU", "Linear", "Module",
    "mse_loss", "cross_entropy",
    "SGD", "Adam", "clip_grad_norm", "clip_grad_value",
    "get_backend", "cuda_status", "BACKENDS",
    "SequenceModel", "Trainer", "Embedding", "NonFiniteError", "make_model", "make_task",
    "ArrayTask", "DataError", "task_from_file", "load_model", "TrainedModel",
    "save_checkpoint", "load_checkpoint", "CheckpointError",
    "fit", "RunResult", "ConfigError", "AlreadyFinished", "RunBusy", "MemoryTooSmall", "BackendUnavailable",
]
