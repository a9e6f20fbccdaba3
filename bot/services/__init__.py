"""What the Discord face uses, with no Discord UI in it: classifying images, fetching
attachments, resolving which labels apply, rate limits, metrics and health."""
