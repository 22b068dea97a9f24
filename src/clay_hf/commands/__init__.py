"""The console scripts: one module per `clay-*` command, each with `main(argv) -> int` (also `python -m
clay_hf.commands.NAME`). A user error is one `error: …` line and exit status 1
([`clay_hf.utils.errors.user_errors`]); anything else keeps its traceback."""
