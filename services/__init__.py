"""The app's own logic around Terra: users' reference ids, connect attempts, connections, the
webhook inbox and how each event changes state. Routes call these; these never read `request`."""
