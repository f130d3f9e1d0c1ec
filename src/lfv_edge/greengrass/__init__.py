"""The Greengrass V2 component: lifecycle over IPC, live configuration, and its build."""
