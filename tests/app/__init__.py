"""Tests of the application layer: configuration, CLI, API."""
