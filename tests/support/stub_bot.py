"""`python -m tests.support.stub_bot`: `python -m bot` with the local transport's worker replaced by
the torch-free stand-in of tests/support/stub_worker.py. Tests only (tests/support/bot_process.py,
BotProcess(..., worker="stub")); the bot itself is untouched: the launcher only passes
`worker_target` to LocalWorkerTransport, the documented hook for a stand-in worker, then runs the
bot's own command line.
"""

from __future__ import annotations

import sys


def use_stub_worker() -> None:
    from bot.transport import local
    from tests.support.stub_worker import run_stub_worker

    real_init = local.LocalWorkerTransport.__init__

    def __init__(self, config, *, worker_target=None):
        real_init(self, config, worker_target=worker_target or run_stub_worker)

    local.LocalWorkerTransport.__init__ = __init__


if __name__ == "__main__":  # the spawned worker re-imports this module as __mp_main__: do nothing then
    use_stub_worker()
    from bot.cli import main

    sys.exit(main())
