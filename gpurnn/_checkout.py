"""Imported first by gpurnn/__init__.py: makes ``gpurnn.kernels`` the kernels/ that belongs to this
gpurnn/, so that one checkout's library never runs with another checkout's kernels."""

import importlib.util
import os
import sys


def load_kernels_beside_this_package():
    """gpurnn.kernels is the top-level kernels/ folder: installed, it is copied to gpurnn/kernels;
    in a source checkout (run from it, or installed editable) it is the kernels/ beside gpurnn/.
    Load that one, so that gpurnn/ and kernels/ always come from the same place: an editable
    install of another checkout would otherwise supply its kernels to this checkout's gpurnn."""
    here = os.path.dirname(os.path.abspath(__file__))
    source = os.path.join(os.path.dirname(here), "kernels")
    if os.path.isdir(os.path.join(here, "kernels")):
        return                  # installed: the import system finds gpurnn/kernels
    if not os.path.isfile(os.path.join(source, "__init__.py")):
        raise ImportError(f"gpurnn in {here} has no kernels: neither {os.path.join(here, 'kernels')} (an installed "
                          f"copy) nor {source} (a source checkout) exists. Install gpurnn again "
                          "(`python -m pip install gpurnn`, or `python -m pip install -e .` in a checkout)")
    spec = importlib.util.spec_from_file_location("gpurnn.kernels", os.path.join(source, "__init__.py"),
                                                  submodule_search_locations=[source])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise


load_kernels_beside_this_package()
