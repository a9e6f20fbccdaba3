"""Shared, torch-free pieces of Wakeru: configuration, label rules and the bot↔worker protocol."""
