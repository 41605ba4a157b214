"""Tracker service: sessions, online linking, statistics, store, gRPC API."""
