"""The `genbatch` command line: `main` (jobs.cli.main) parses the arguments (parser), runs the command
(commands) and prints its summary (printers); it is the one place that turns exceptions into messages and
exit codes."""
