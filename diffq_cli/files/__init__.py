"""What is written to disk and read back: artifacts, entropy coding, checks, size reports,
exports and pictures. Imports models, data, config and quant; never a run."""
