"""The Ray Serve application (recommendations over HTTP); built with the serving stage."""
