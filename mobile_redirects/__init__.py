"""The mobile return leg: HTTPS return pages that hand the user back to the app, the deep links they
use (built only from configuration), and the app-association files for Universal Links and App Links."""
