"""Shared utilities below every other room of the package: the machine description and timing helpers (`benchmarking`),
user errors and the commands' error contract (`errors`), chip footprints in OGC:CRS84 (`geometry`), the package
logger (`logging`), the CPU malloc setting for training (`memory`), one check of model paths and Hub ids
(`model_source`), how every writer puts files on disk (`outputs`)."""
