import sys

if __name__ == "__main__":  # the spawned worker re-imports this module as __mp_main__: do nothing then
    from bot.cli import main

    sys.exit(main())
