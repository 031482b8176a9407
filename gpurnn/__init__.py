"""gpurnn: recurrent networks trained with backpropagation through time, on NVIDIA GPUs through
custom Numba CUDA kernels and on any CPU through a Numba fallback.

``gpurnn.torch`` (imported on its own; it needs torch) holds RNN, LSTM and GRU as torch.nn modules
on the same kernels."""



def _kernels_beside_this_package():
    """gpurnn.kernels is the top-level kernels/ folder: installed, it is copied to gpurnn/kernels;
    in a source checkout (run from it, or installed editable) it is the kernels/ beside gpurnn/.
    Load that one, so that gpurnn/ and kernels/ always come from the same place: an editable
    install of another checkout would otherwise supply its kernels to this checkout's gpurnn."""
    import importlib.util
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    source = os.path.join(os.path.dirname(here), "kernels")
    if os.path.isdir(os.path.join(here, "kernels")):
        return                  # installed: the import system finds gpurnn/kernels
    if not os.path.isfile(os.path.join(source, "__init__.py")):
        raise ImportError(f"gpurnn in {here} has no kernels: neither {os.path.join(here, 'kernels')} (an installed "
                          f"copy) nor {source} (a source checkout) exists. Install gpurnn again "
                          "(`python -m pip install gpurnn`, or `python -m pip install -e .` in a checkout)")
    spec = importlib.util.spec_from_file_location(__name__ + ".kernels", os.path.join(source, "__init__.py"),
                                                  submodule_search_locations=[source])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise


_kernels_beside_this_package()
from . import kernels  # noqa: E402  (the package of every kernel; the library imports it, never the reverse)

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
