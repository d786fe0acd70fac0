"""Models by name (timm / torchvision), their surgery (heads, first convs, local weights) and
the cached list of names."""
