"""`appliance dashboard`: a Textual control panel that talks to a running appliance over HTTP only."""
