"""Developer tools that are not part of a running bot (`python -m bot bench-queue`)."""
