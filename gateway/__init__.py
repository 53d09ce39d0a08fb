"""HTTPS gateway, certificate tool and connection probe for private registries."""

__version__ = "0.1.0"
