"""Where customer records come from: plain classes behind one ``CustomerSource`` interface."""
