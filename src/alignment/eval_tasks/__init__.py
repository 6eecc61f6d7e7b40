"""lm-evaluation-harness task definitions shipped with the package, each read from a local file.

Each `<name>.yaml` here defines the lm-eval task `<name>` (the file name is the task name, so
`alignment.harness` knows them without indexing lm-eval's 14k-task registry). `dataset_kwargs.data_files`
holds the default file, relative to the working directory; `alignment.harness` swaps in the file the user
names. They also run from lm-eval's own CLI: `lm_eval --include_path <this folder> --tasks tiny_exact_match`.
"""
