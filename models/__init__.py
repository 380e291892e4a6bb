"""Plain dataclasses and validation shared by every layer; imports nothing of the project."""
