"""fastgear.bench: a load generator for any Gearman job server.

`python -m fastgear.bench` (or `fastgear bench`) drives a server with pipelined
background or foreground jobs from a compiled, GIL-free epoll loop (`_loop.pyx`), checks
that every job completed exactly once, and with `--compare` runs the same load against
fastgear and gearmand for a side-by-side table. See `cli.py` for the options.
"""


def main(argv=None, prog="python -m fastgear.bench"):
    # Imported here so `import fastgear.bench` works before the extension is built.
    from fastgear.bench.cli import main as cli_main
    return cli_main(argv, prog)
