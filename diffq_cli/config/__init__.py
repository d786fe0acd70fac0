"""Recipes: the validated dataclasses (schema) and the YAML + overrides that fill them (load)."""
