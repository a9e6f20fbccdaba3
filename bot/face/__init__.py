"""The Discord face: the client and its gateway events, the slash commands as cogs, the
permission checks, rendering answers into embeds, and the ja/en texts."""
