"""Local stand-ins for the vendors and the model: real HTTP servers with fault injection."""
