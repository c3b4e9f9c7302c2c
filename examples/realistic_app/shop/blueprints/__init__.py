"""The shop's blueprints."""
