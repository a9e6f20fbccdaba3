"""The Discord bot (arrives with issue 3). It talks to model_worker only through wakeru.protocol and never imports torch."""
