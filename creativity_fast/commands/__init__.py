"""Sub-commands of the ``creativity-fast`` CLI; each module has ``register(subparsers)`` and ``run(args)``."""
