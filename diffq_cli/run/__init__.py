"""A training run: data order, the loop, size targets, baselines, logs, distributed helpers.

Imports config, data, models, files and quant; never the CLI."""
