"""The ``edgeresnet`` command line. The only package that talks to the terminal.

``__init__`` holds the click group and :func:`main` (every failure one line);
``options`` the shared options; ``host`` the commands that need TensorFlow
(convert, report, models); ``device`` the ones that run on a device (predict,
eval, inspect, bench). Heavy modules (TensorFlow, the pipeline) are imported
inside the commands so ``edgeresnet --help`` answers at once.
"""

from __future__ import annotations

import os
import sys
import warnings

import click

from edgeresnet.cli import device, host
from edgeresnet.cli.optimize import optimize as _optimize
from edgeresnet.cli.options import CONTEXT, _fail
from edgeresnet.errors import (
    EXIT_INTERNAL,
    EXIT_SIGINT,
    EXIT_USAGE,
    ClusterError,
    EdgeResNetError,
    EdgeResNetWarning,
)


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="edgeresnet")
def cli():
    """Take Keras ResNets to verified TFLite models for CPU (XNNPACK), Coral Edge TPU and mobile GPU.

    Start with `edgeresnet convert --int8`: it converts the built-in reference
    ResNet and verifies it on built-in real data.
    """


for _command in (host.convert, host.report, _optimize, host.models, device.inspect, device.bench, device.predict, device.eval_):
    cli.add_command(_command)


def _interrupted(exc) -> None:
    """Exit 130 on Ctrl-C, 143 on SIGTERM; partial output was removed on the way out."""
    code = getattr(exc, "exit_code", EXIT_SIGINT)
    name = getattr(exc, "args", ("",))[0] if code != EXIT_SIGINT else "Ctrl-C"
    _fail(f"interrupted ({name or 'Ctrl-C'}); partial output removed, any previous output left as it was", code)


_python_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """edgeresnet's own warnings as one ``warning:`` line; anything else as Python shows it."""
    if issubclass(category, EdgeResNetWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


def main(argv=None):
    """Console entry point: every user-facing failure is one line and a non-zero exit."""
    from edgeresnet._util.signals import handle_signals

    try:
        with handle_signals(), warnings.catch_warnings():  # SIGTERM (CI cancel, docker stop) is handled like Ctrl-C
            warnings.simplefilter("always", EdgeResNetWarning)
            # Pillow's raw decompression-bomb warning names no file; calibration warns with the file name instead.
            warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
            warnings.showwarning = _show_warning
            rv = cli.main(args=argv, prog_name="edgeresnet", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        _fail(" ".join(exc.format_message().split()) + hint, EXIT_USAGE)
    except click.exceptions.Abort as exc:  # click turns KeyboardInterrupt into Abort
        _interrupted(exc.__context__)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except ClusterError as exc:
        # TensorFlow's cluster threads never return from a failed join and would
        # hold the interpreter's shutdown forever: say it, then leave at once
        # (everything edgeresnet made was removed on the way here).
        click.echo(f"error: {exc}", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exc.exit_code)
    except EdgeResNetError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except Exception as exc:  # a bug: keep it one line unless asked for the traceback
        if os.environ.get("EDGERESNET_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set EDGERESNET_DEBUG=1 for the traceback)", EXIT_INTERNAL)
    sys.exit(rv if isinstance(rv, int) else 0)

