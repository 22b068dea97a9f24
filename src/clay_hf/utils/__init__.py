"""Shared utilities below every other room of the package: user errors and how every writer puts files on disk."""
