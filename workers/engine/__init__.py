"""The numerical engine: pure torch/numpy/scipy. Import submodules directly.

One sub-package per pipeline stage (``io`` → ``models`` → ``influence`` / ``objectives`` →
``weights`` → ``unlearning`` → ``evaluation``), run in order by ``pipeline``; ``config`` and
``errors`` are torch-free and shared with the HTTP front end.
"""
