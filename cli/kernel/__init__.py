"""The kernel side of cowfs: the IPython extension, tracking what each cell touched, saving
and restoring the kernel's variables. ``cowfs.cli.kernel.extension`` is the entry point."""
