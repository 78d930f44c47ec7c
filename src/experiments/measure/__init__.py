"""Measurement: parameter, FLOP and activation counts; step time, throughput, peak memory; gradient flow."""
