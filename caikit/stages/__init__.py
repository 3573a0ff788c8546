"""Pipeline stages. Each declares what it reads and writes and two hooks: build the prompt, parse the answer."""
