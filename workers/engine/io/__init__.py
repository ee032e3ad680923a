"""Load stage: reading and validating what a job is given. The allow-listed architecture
(``architecture``), safetensors checkpoints checked header-first against it (``safetensors_header``,
``checkpoint``), tabular datasets with their schema (``datasets``), and the cross-checked inputs of
one job (``inputs``). Everything but ``checkpoint`` and ``inputs`` is torch-free, since the HTTP
front end runs the same validation at upload time.
"""
