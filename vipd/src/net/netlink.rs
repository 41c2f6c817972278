//! Talks to the kernel over rtnetlink: dumps links, the main IPv4 routes and
//! every IPv4 address; adds and removes VIPs with vipd's mark; and streams
//! address, route and link events on a connection of their own.

// HELPER-A: implementation goes here.
