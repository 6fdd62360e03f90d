"""Sensor domain logic: the Sensor spec, paths, filters, conditions, parameters, runner."""
