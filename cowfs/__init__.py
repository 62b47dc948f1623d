"""cowfs: a copy-on-write, versioned workspace filesystem for notebook users.

The engine lives in ``cowfs.fs``, the FUSE daemon in ``cowfs.daemon`` and the command line
and kernel extension in ``cowfs.cli``. ``%load_ext cowfs`` loads the kernel extension.
"""

__version__ = "0.1.0"


def load_ipython_extension(ipython):  # noqa: ANN001 - IPython's own type
    from cowfs.cli.kernel.extension import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython):  # noqa: ANN001
    from cowfs.cli.kernel.extension import unload_ipython_extension as unload

    unload(ipython)
