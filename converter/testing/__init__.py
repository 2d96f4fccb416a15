"""Helpers for test suites: build images from Python descriptions, list trees."""
