"""Adapters: the only modules that import Azure SDKs. Each implements ports from controller.ports
and translates SDK errors into controller.errors once, here (see azure_errors.translated)."""
