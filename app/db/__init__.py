"""Persistence: typed models and sessions. Migrations live in ../migrations."""
