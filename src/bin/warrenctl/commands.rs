//! The commands: each one is a few management API requests, rabbitmqctl's informational
//! lines around them, and rabbitmqctl's error text and exit code when the API says no.
//!
//! Imports only serde_json and this binary's own modules; never the broker.

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::client::{code_for_status, exit, segment, Client, Failure, Target};
use crate::columns::{self, Kind};
use crate::output::Output;

pub struct Ctx<'a> {
    pub client: &'a Client,
    pub out: Output,
    pub vhost: &'a str,
    pub timeout_s: Option<u64>,
}

/// A failure built from an API reply the command did not expect.
fn refused(status: u16, reason: String) -> Failure {
    Failure::new(code_for_status(status), format!("Error:\n{reason}"))
}

fn no_such_user(user: &str) -> Failure {
    Failure::new(
        exit::NOUSER,
        format!("Error:\nUser \"{user}\" does not exist"),
    )
}

fn no_such_trace_file(name: &str) -> Failure {
    Failure::new(
        exit::DATAERR,
        format!("Error:\nTrace file \"{name}\" does not exist"),
    )
}

fn no_such_vhost(vhost: &str) -> Failure {
    Failure::new(
        exit::DATAERR,
        format!("Virtual host '{vhost}' does not exist"),
    )
}

/// Gigabytes with four decimals, as rabbitmqctl status prints memory and disk figures.
fn gb(bytes: Option<u64>) -> Option<String> {
    bytes.map(|b| {
        let v = b as f64 / 1e9;
        format!("{}", (v * 10_000.0).round() / 10_000.0)
    })
}

/// What a listener is for, in rabbitmqctl status's words.
fn purpose(protocol: &str) -> &'static str {
    match protocol {
        "amqp" => "AMQP 0-9-1 and AMQP 1.0",
        "amqp/ssl" => "AMQP 0-9-1 and AMQP 1.0 over TLS",
        "http" => "HTTP API",
        "https" => "HTTP API over TLS (HTTPS)",
        "clustering" => "inter-node and CLI tool communication",
        "http/prometheus" => "Prometheus exporter API over HTTP",
        _ => "",
    }
}

fn interface(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

impl Ctx<'_> {
    fn vhost_path(&self) -> String {
        segment(self.vhost)
    }

    /// Fails with "does not exist" when the vhost is unknown.
    fn require_vhost(&self, vhost: &str) -> Result<Value, Failure> {
        let reply = self
            .client
            .get(&format!("/api/vhosts/{}", segment(vhost)))?;
        match reply.status {
            404 => Err(no_such_vhost(vhost)),
            s if !(200..300).contains(&s) => Err(refused(s, reply.reason())),
            _ => Ok(reply.body),
        }
    }

    fn user(&self, user: &str) -> Result<Value, Failure> {
        let reply = self.client.get(&format!("/api/users/{}", segment(user)))?;
        match reply.status {
            404 => Err(no_such_user(user)),
            s if !(200..300).contains(&s) => Err(refused(s, reply.reason())),
            _ => Ok(reply.body),
        }
    }

    /// The shared body of the list commands.
    #[allow(clippy::too_many_arguments)]
    fn list(
        &self,
        kind: Kind,
        asked: &[String],
        keys: &[&str],
        default: &[&str],
        path: &str,
        vhost_scoped: bool,
        info: &[String],
    ) -> Result<(), Failure> {
        let chosen = columns::chosen(asked, default);
        let bad = columns::unknown(&chosen, keys);
        if !bad.is_empty() {
            return Err(Failure::new(
                exit::USAGE,
                format!(
                    "Error (argument validation): Info key(s) {} are not supported\n\
                     Each column must be one of: {}",
                    bad.join(","),
                    keys.join(", ")
                ),
            ));
        }
        for line in info {
            self.out.info(line);
        }
        let reply = self.client.get(path)?;
        if reply.status == 404 && vhost_scoped {
            self.require_vhost(self.vhost)?;
        }
        if !reply.ok() {
            return Err(refused(reply.status, reply.reason()));
        }
        let items = reply.body.as_array().cloned().unwrap_or_default();
        let rows: Vec<Vec<Value>> = items
            .iter()
            .map(|item| {
                chosen
                    .iter()
                    .map(|c| columns::pick(kind, c, item))
                    .collect()
            })
            .collect();
        self.out.table(&chosen, &rows);
        Ok(())
    }

    pub fn list_queues(&self, asked: &[String]) -> Result<(), Failure> {
        let timeout = self.timeout_s.unwrap_or(60);
        self.list(
            Kind::Queue,
            asked,
            columns::QUEUE_KEYS,
            columns::QUEUE_DEFAULT,
            &format!("/api/queues/{}", self.vhost_path()),
            true,
            &[
                format!("Timeout: {timeout}.0 seconds ..."),
                format!("Listing queues for vhost {} ...", self.vhost),
            ],
        )
    }

    pub fn list_exchanges(&self, asked: &[String]) -> Result<(), Failure> {
        self.list(
            Kind::Exchange,
            asked,
            columns::EXCHANGE_KEYS,
            columns::EXCHANGE_DEFAULT,
            &format!("/api/exchanges/{}", self.vhost_path()),
            true,
            &[format!("Listing exchanges for vhost {} ...", self.vhost)],
        )
    }

    pub fn list_bindings(&self, asked: &[String]) -> Result<(), Failure> {
        self.list(
            Kind::Binding,
            asked,
            columns::BINDING_KEYS,
            columns::BINDING_DEFAULT,
            &format!("/api/bindings/{}", self.vhost_path()),
            true,
            // rabbitmqctl 3.10 prints this one without the space before the dots.
            &[format!("Listing bindings for vhost {}...", self.vhost)],
        )
    }

    pub fn list_connections(&self, asked: &[String]) -> Result<(), Failure> {
        self.list(
            Kind::Connection,
            asked,
            columns::CONNECTION_KEYS,
            columns::CONNECTION_DEFAULT,
            "/api/connections",
            false,
            &["Listing connections ...".to_string()],
        )
    }

    pub fn list_channels(&self, asked: &[String]) -> Result<(), Failure> {
        self.list(
            Kind::Channel,
            asked,
            columns::CHANNEL_KEYS,
            columns::CHANNEL_DEFAULT,
            "/api/channels",
            false,
            &["Listing channels ...".to_string()],
        )
    }

    pub fn list_consumers(&self, asked: &[String]) -> Result<(), Failure> {
        self.list(
            Kind::Consumer,
            asked,
            columns::CONSUMER_KEYS,
            columns::CONSUMER_DEFAULT,
            &format!("/api/consumers/{}", self.vhost_path()),
            true,
            &[format!("Listing consumers in vhost {} ...", self.vhost)],
        )
    }

    pub fn list_vhosts(&self, asked: &[String]) -> Result<(), Failure> {
        self.list(
            Kind::Vhost,
            asked,
            columns::VHOST_KEYS,
            columns::VHOST_DEFAULT,
            "/api/vhosts",
            false,
            &["Listing vhosts ...".to_string()],
        )
    }

    pub fn list_users(&self) -> Result<(), Failure> {
        self.out.info("Listing users ...");
        let users = self.client.get_ok("/api/users")?;
        let rows: Vec<Vec<Value>> = users
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|u| {
                let tags = columns::tags(u.get("tags"));
                vec![
                    u.get("name").cloned().unwrap_or(Value::Null),
                    Value::Array(tags.into_iter().map(Value::String).collect()),
                ]
            })
            .collect();
        self.out
            .table(&["user".to_string(), "tags".to_string()], &rows);
        Ok(())
    }

    pub fn list_permissions(&self) -> Result<(), Failure> {
        self.out.info(&format!(
            "Listing permissions for vhost \"{}\" ...",
            self.vhost
        ));
        let reply = self
            .client
            .get(&format!("/api/vhosts/{}/permissions", self.vhost_path()))?;
        if reply.status == 404 {
            return Err(no_such_vhost(self.vhost));
        }
        if !reply.ok() {
            return Err(refused(reply.status, reply.reason()));
        }
        let cols = ["user", "configure", "write", "read"];
        let rows: Vec<Vec<Value>> = reply
            .body
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|p| {
                cols.iter()
                    .map(|c| p.get(*c).cloned().unwrap_or(Value::Null))
                    .collect()
            })
            .collect();
        let names: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
        self.out.table(&names, &rows);
        Ok(())
    }

    pub fn list_policies(&self) -> Result<(), Failure> {
        self.out.info(&format!(
            "Listing policies for vhost \"{}\" ...",
            self.vhost
        ));
        let reply = self
            .client
            .get(&format!("/api/policies/{}", self.vhost_path()))?;
        if reply.status == 404 {
            return Err(no_such_vhost(self.vhost));
        }
        if !reply.ok() {
            return Err(refused(reply.status, reply.reason()));
        }
        let cols = [
            "vhost",
            "name",
            "pattern",
            "apply-to",
            "definition",
            "priority",
        ];
        let rows: Vec<Vec<Value>> = reply
            .body
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|p| {
                cols.iter()
                    .map(|c| match (*c, p.get(*c)) {
                        // rabbitmqctl shows the definition as its JSON text, in both formats.
                        ("definition", Some(d)) => Value::String(d.to_string()),
                        (_, v) => v.cloned().unwrap_or(Value::Null),
                    })
                    .collect()
            })
            .collect();
        let names: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
        self.out.table(&names, &rows);
        Ok(())
    }

    /// The node's name and its /api/nodes entry (empty when the API has none).
    fn node(&self, overview: &Value) -> Result<(String, Value), Failure> {
        let name = overview
            .get("node")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        let reply = self.client.get(&format!("/api/nodes/{}", segment(&name)))?;
        let node = if reply.ok() {
            reply.body
        } else {
            let all = self.client.get_ok("/api/nodes")?;
            all.get(0).cloned().unwrap_or(Value::Null)
        };
        Ok((name, node))
    }

    fn listeners(overview: &Value) -> Vec<Value> {
        overview
            .get("listeners")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    fn alarms(node: &Value) -> Vec<String> {
        let mut alarms = Vec::new();
        if node.get("mem_alarm").and_then(Value::as_bool) == Some(true) {
            alarms.push("memory".to_string());
        }
        if node.get("disk_free_alarm").and_then(Value::as_bool) == Some(true) {
            alarms.push("disk".to_string());
        }
        alarms
    }

    fn version(overview: &Value) -> (String, String) {
        let s = |k: &str| overview.get(k).and_then(Value::as_str).map(str::to_string);
        let product = s("product_name").unwrap_or_else(|| "RabbitMQ".to_string());
        let version = s("product_version")
            .or_else(|| s("rabbitmq_version"))
            .unwrap_or_default();
        (product, version)
    }

    pub fn status(&self) -> Result<(), Failure> {
        let overview = self.client.get_ok("/api/overview")?;
        let (name, node) = self.node(&overview)?;
        let vhosts = self.client.get_ok("/api/vhosts")?;
        let vhost_count = vhosts.as_array().map_or(0, Vec::len);
        let u = |k: &str| node.get(k).and_then(Value::as_u64);
        let totals = |k: &str| {
            overview
                .get("object_totals")
                .and_then(|t| t.get(k))
                .and_then(Value::as_u64)
        };
        let (product, version) = Self::version(&overview);
        let listeners = Self::listeners(&overview);
        let alarms = Self::alarms(&node);
        if self.out.json() {
            let doc = json!({
                "node_name": name,
                "pid": node.get("os_pid"),
                "product_name": product,
                "product_version": version,
                "rabbitmq_version": overview.get("rabbitmq_version"),
                "erlang_version": overview.get("erlang_full_version").or(overview.get("erlang_version")),
                "uptime": u("uptime").map(|ms| ms / 1000),
                "alarms": alarms,
                "memory": {"total": {"rss": u("mem_used")}},
                "vm_memory_high_watermark_limit": u("mem_limit"),
                "disk_free": u("disk_free"),
                "disk_free_limit": u("disk_free_limit"),
                "file_descriptors": {
                    "total_used": u("fd_used"), "total_limit": u("fd_total"),
                    "sockets_used": u("sockets_used"), "sockets_limit": u("sockets_total"),
                },
                "totals": {
                    "connection_count": totals("connections"),
                    "queue_count": totals("queues"),
                    "virtual_host_count": vhost_count,
                },
                "listeners": listeners.iter().map(|l| json!({
                    "node": name,
                    "interface": interface(l.get("ip_address").and_then(Value::as_str).unwrap_or("")),
                    "port": l.get("port"),
                    "protocol": l.get("protocol"),
                    "purpose": purpose(l.get("protocol").and_then(Value::as_str).unwrap_or("")),
                })).collect::<Vec<_>>(),
            });
            println!("{doc}");
            return Ok(());
        }
        let mut text = String::new();
        let mut line = |s: String| {
            text.push_str(&s);
            text.push('\n');
        };
        if !self.out.quiet && !self.out.silent {
            line(format!("Status of node {name} ..."));
        }
        line("Runtime\n".to_string());
        if let Some(pid) = node.get("os_pid").filter(|p| !p.is_null()) {
            line(format!("OS PID: {}", crate::output::cell(pid)));
        }
        if let Some(up) = u("uptime") {
            line(format!("Uptime (seconds): {}", up / 1000));
        }
        line(format!("{product} version: {version}"));
        line(format!("Node name: {name}"));
        if let Some(e) = overview.get("erlang_full_version").and_then(Value::as_str) {
            line(format!("Erlang configuration: {e}"));
        }
        line("\nAlarms\n".to_string());
        if alarms.is_empty() {
            line("(none)".to_string());
        }
        for a in &alarms {
            let what = if a == "memory" {
                "Memory"
            } else {
                "Free disk space"
            };
            line(format!("{what} alarm on node {name}"));
        }
        line("\nMemory\n".to_string());
        if let Some(used) = gb(u("mem_used")) {
            line(format!("Total memory used: {used} gb"));
        }
        if let Some(limit) = gb(u("mem_limit")) {
            line(format!(
                "Memory high watermark setting: computed to: {limit} gb"
            ));
        }
        line("\nFile Descriptors\n".to_string());
        if let (Some(used), Some(limit)) = (u("fd_used"), u("fd_total")) {
            line(format!("Total: {used}, limit: {limit}"));
        }
        if let (Some(used), Some(limit)) = (u("sockets_used"), u("sockets_total")) {
            line(format!("Sockets: {used}, limit: {limit}"));
        }
        line("\nFree Disk Space\n".to_string());
        if let Some(limit) = gb(u("disk_free_limit")) {
            line(format!("Low free disk space watermark: {limit} gb"));
        }
        if let Some(free) = gb(u("disk_free")) {
            line(format!("Free disk space: {free} gb"));
        }
        line("\nTotals\n".to_string());
        if let Some(n) = totals("connections") {
            line(format!("Connection count: {n}"));
        }
        if let Some(n) = totals("queues") {
            line(format!("Queue count: {n}"));
        }
        line(format!("Virtual host count: {vhost_count}"));
        line("\nListeners\n".to_string());
        for l in &listeners {
            let protocol = l.get("protocol").and_then(Value::as_str).unwrap_or("");
            line(format!(
                "Interface: {}, port: {}, protocol: {protocol}, purpose: {}",
                interface(l.get("ip_address").and_then(Value::as_str).unwrap_or("")),
                crate::output::cell(l.get("port").unwrap_or(&Value::Null)),
                purpose(protocol)
            ));
        }
        print!("{text}");
        Ok(())
    }

    pub fn cluster_status(&self) -> Result<(), Failure> {
        let overview = self.client.get_ok("/api/overview")?;
        let (name, node) = self.node(&overview)?;
        let (product, version) = Self::version(&overview);
        let erlang = overview
            .get("erlang_version")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let cluster_name = overview
            .get("cluster_name")
            .and_then(Value::as_str)
            .unwrap_or(&name)
            .to_string();
        let listeners = Self::listeners(&overview);
        let alarms = Self::alarms(&node);
        let running = node.get("running").and_then(Value::as_bool).unwrap_or(true);
        let running_nodes: Vec<&str> = if running { vec![&name] } else { vec![] };
        if self.out.json() {
            let mut versions = Map::new();
            versions.insert(
                name.clone(),
                json!({"rabbitmq_name": product, "rabbitmq_version": version, "erlang_version": erlang}),
            );
            let doc = json!({
                "cluster_name": cluster_name,
                "disk_nodes": [name],
                "ram_nodes": [],
                "running_nodes": running_nodes,
                "versions": versions,
                "maintenance_status": {name.clone(): "not under maintenance"},
                "alarms": alarms.iter().map(|a| json!({"node": name, "type": a})).collect::<Vec<_>>(),
                "partitions": {},
                "listeners": {name.clone(): listeners.iter().map(|l| json!({
                    "node": name,
                    "interface": interface(l.get("ip_address").and_then(Value::as_str).unwrap_or("")),
                    "port": l.get("port"),
                    "protocol": l.get("protocol"),
                    "purpose": purpose(l.get("protocol").and_then(Value::as_str).unwrap_or("")),
                })).collect::<Vec<_>>()},
            });
            println!("{doc}");
            return Ok(());
        }
        let mut text = String::new();
        let mut line = |s: String| {
            text.push_str(&s);
            text.push('\n');
        };
        if !self.out.quiet && !self.out.silent {
            line(format!("Cluster status of node {name} ..."));
        }
        line(format!("Basics\n\nCluster name: {cluster_name}\n"));
        line(format!("Disk Nodes\n\n{name}\n"));
        line("Running Nodes\n".to_string());
        for n in &running_nodes {
            line(n.to_string());
        }
        line(String::new());
        line(format!(
            "Versions\n\n{name}: {product} {version}{}\n",
            if erlang.is_empty() {
                String::new()
            } else {
                format!(" on Erlang {erlang}")
            }
        ));
        line(format!(
            "Maintenance status\n\nNode: {name}, status: not under maintenance\n"
        ));
        line("Alarms\n".to_string());
        if alarms.is_empty() {
            line("(none)".to_string());
        }
        for a in &alarms {
            line(format!("Node: {name}, alarm: {a}"));
        }
        line("\nNetwork Partitions\n\n(none)\n".to_string());
        line("Listeners\n".to_string());
        for l in &listeners {
            let protocol = l.get("protocol").and_then(Value::as_str).unwrap_or("");
            line(format!(
                "Node: {name}, interface: {}, port: {}, protocol: {protocol}, purpose: {}",
                interface(l.get("ip_address").and_then(Value::as_str).unwrap_or("")),
                crate::output::cell(l.get("port").unwrap_or(&Value::Null)),
                purpose(protocol)
            ));
        }
        print!("{text}");
        Ok(())
    }

    /// trace_on / trace_off: the vhost's `tracing` flag, through PUT /api/vhosts/{vhost}
    /// (with its description, tags and default queue type sent back unchanged, as a PUT
    /// replaces them).
    pub fn trace(&self, on: bool) -> Result<(), Failure> {
        let verb = if on { "Starting" } else { "Stopping" };
        self.out
            .info(&format!("{verb} tracing for vhost \"{}\" ...", self.vhost));
        let current = self.require_vhost(self.vhost)?;
        let mut body = Map::new();
        if let Some(d) = current.get("description").filter(|d| d.is_string()) {
            body.insert("description".into(), d.clone());
        }
        let tags = columns::tags(current.get("tags"));
        body.insert("tags".into(), Value::String(tags.join(",")));
        if let Some(q) = current
            .get("default_queue_type")
            .filter(|q| q.as_str().is_some_and(|q| q != "undefined"))
        {
            body.insert("default_queue_type".into(), q.clone());
        }
        body.insert("tracing".into(), Value::Bool(on));
        let reply = self.client.put(
            &format!("/api/vhosts/{}", self.vhost_path()),
            &Value::Object(body),
        )?;
        if !reply.ok() {
            return Err(refused(reply.status, reply.reason()));
        }
        let done = if on { "enabled" } else { "disabled" };
        self.out
            .info(&format!("Trace {done} for vhost {}", self.vhost));
        Ok(())
    }

    /// list_traces: the trace log files' traces of the vhost (GET /api/traces/{vhost}, as
    /// the rabbitmq_tracing plugin has it).
    pub fn list_traces(&self) -> Result<(), Failure> {
        self.out
            .info(&format!("Listing traces for vhost \"{}\" ...", self.vhost));
        let reply = self
            .client
            .get(&format!("/api/traces/{}", self.vhost_path()))?;
        if reply.status == 404 {
            return Err(no_such_vhost(self.vhost));
        }
        if !reply.ok() {
            return Err(refused(reply.status, reply.reason()));
        }
        let cols = [
            "vhost",
            "name",
            "format",
            "pattern",
            "max_payload_bytes",
            "dropped",
        ];
        let rows: Vec<Vec<Value>> = reply
            .body
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            // GET /api/traces/{vhost} lists every vhost's traces on RabbitMQ 3.10.
            .filter(|t| t.get("vhost").and_then(Value::as_str) == Some(self.vhost))
            .map(|t| {
                cols.iter()
                    .map(|c| t.get(*c).cloned().unwrap_or(Value::Null))
                    .collect()
            })
            .collect();
        let names: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
        self.out.table(&names, &rows);
        Ok(())
    }

    /// add_trace: starts a trace writing NAME.log (PUT /api/traces/{vhost}/{name}).
    pub fn add_trace(
        &self,
        name: &str,
        format: &str,
        pattern: &str,
        max_payload_bytes: Option<u64>,
    ) -> Result<(), Failure> {
        self.out.info(&format!(
            "Starting trace \"{name}\" for vhost \"{}\" ...",
            self.vhost
        ));
        let mut body = json!({"format": format, "pattern": pattern});
        if let Some(max) = max_payload_bytes {
            body["max_payload_bytes"] = json!(max);
        }
        let reply = self.client.put(
            &format!("/api/traces/{}/{}", self.vhost_path(), segment(name)),
            &body,
        )?;
        match reply.status {
            404 => Err(no_such_vhost(self.vhost)),
            s if !(200..300).contains(&s) => Err(refused(s, reply.reason())),
            _ => Ok(()),
        }
    }

    /// delete_trace: stops a trace (DELETE /api/traces/{vhost}/{name}); its file stays.
    pub fn delete_trace(&self, name: &str) -> Result<(), Failure> {
        self.out.info(&format!(
            "Stopping trace \"{name}\" for vhost \"{}\" ...",
            self.vhost
        ));
        let reply = self.client.delete(
            &format!("/api/traces/{}/{}", self.vhost_path(), segment(name)),
            &[],
        )?;
        match reply.status {
            404 => Err(Failure::new(
                exit::DATAERR,
                format!(
                    "Error:\nTrace \"{name}\" does not exist in vhost \"{}\"",
                    self.vhost
                ),
            )),
            s if !(200..300).contains(&s) => Err(refused(s, reply.reason())),
            _ => Ok(()),
        }
    }

    /// list_trace_files: the trace log files and their sizes (GET /api/trace-files).
    pub fn list_trace_files(&self) -> Result<(), Failure> {
        self.out.info("Listing trace log files ...");
        let files = self.client.get_ok("/api/trace-files")?;
        let cols = ["name", "size"];
        let rows: Vec<Vec<Value>> = files
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|f| {
                cols.iter()
                    .map(|c| f.get(*c).cloned().unwrap_or(Value::Null))
                    .collect()
            })
            .collect();
        let names: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
        self.out.table(&names, &rows);
        Ok(())
    }

    /// get_trace_file: writes a trace log file to PATH, or to standard output.
    pub fn get_trace_file(&self, name: &str, path: &str) -> Result<(), Failure> {
        let (status, text) = self.client.request_text(
            "GET",
            &format!("/api/trace-files/{}", segment(name)),
            None,
            &[],
        )?;
        if status == 404 {
            return Err(no_such_trace_file(name));
        }
        if !(200..300).contains(&status) {
            return Err(refused(status, format!("HTTP status {status}")));
        }
        if path == "-" {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(text.as_bytes());
            return Ok(());
        }
        self.out
            .info(&format!("Writing trace file \"{name}\" to \"{path}\" ..."));
        std::fs::write(path, text).map_err(|e| {
            Failure::new(
                exit::DATAERR,
                format!("Error:\nCannot write to file {path}: {e}"),
            )
        })
    }

    /// delete_trace_file: DELETE /api/trace-files/{name}.
    pub fn delete_trace_file(&self, name: &str) -> Result<(), Failure> {
        self.out
            .info(&format!("Deleting trace file \"{name}\" ..."));
        let reply = self
            .client
            .delete(&format!("/api/trace-files/{}", segment(name)), &[])?;
        match reply.status {
            404 => Err(no_such_trace_file(name)),
            s if !(200..300).contains(&s) => Err(refused(s, reply.reason())),
            _ => Ok(()),
        }
    }

    pub fn add_user(&self, user: &str, password: Option<String>) -> Result<(), Failure> {
        let password = match password {
            Some(p) => p,
            None => {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).map_err(|e| {
                    Failure::new(
                        exit::DATAERR,
                        format!("Error:\ncannot read the password: {e}"),
                    )
                })?;
                line.trim_end_matches(['\r', '\n']).to_string()
            }
        };
        self.out.info(&format!("Adding user \"{user}\" ..."));
        let existing = self.client.get(&format!("/api/users/{}", segment(user)))?;
        if existing.ok() {
            return Err(Failure::new(
                exit::SOFTWARE,
                format!("Error:\nUser \"{user}\" already exists"),
            ));
        }
        let reply = self.client.put(
            &format!("/api/users/{}", segment(user)),
            &json!({"password": password, "tags": ""}),
        )?;
        if !reply.ok() {
            return Err(refused(reply.status, reply.reason()));
        }
        self.out.info(
            "Done. Don't forget to grant the user permissions to some virtual hosts! \
             See 'warrenctl help set_permissions' to learn more.",
        );
        Ok(())
    }

    pub fn delete_user(&self, user: &str) -> Result<(), Failure> {
        self.out.info(&format!("Deleting user \"{user}\" ..."));
        let reply = self
            .client
            .delete(&format!("/api/users/{}", segment(user)), &[])?;
        match reply.status {
            404 => Err(no_such_user(user)),
            s if !(200..300).contains(&s) => Err(refused(s, reply.reason())),
            _ => Ok(()),
        }
    }

    pub fn change_password(&self, user: &str, password: &str) -> Result<(), Failure> {
        self.out
            .info(&format!("Changing password for user \"{user}\" ..."));
        let current = self.user(user)?;
        // A PUT replaces the user: send its tags back so only the password changes.
        let tags = columns::tags(current.get("tags")).join(",");
        let reply = self.client.put(
            &format!("/api/users/{}", segment(user)),
            &json!({"password": password, "tags": tags}),
        )?;
        if !reply.ok() {
            return Err(refused(reply.status, reply.reason()));
        }
        Ok(())
    }

    pub fn set_user_tags(&self, user: &str, tags: &[String]) -> Result<(), Failure> {
        self.out.info(&format!(
            "Setting tags for user \"{user}\" to [{}] ...",
            tags.join(", ")
        ));
        let current = self.user(user)?;
        // A PUT replaces the user: send its password hash back so it can still log in.
        let mut body = Map::new();
        body.insert("tags".into(), Value::String(tags.join(",")));
        for key in ["password_hash", "hashing_algorithm"] {
            if let Some(v) = current.get(key).filter(|v| v.is_string()) {
                body.insert(key.into(), v.clone());
            }
        }
        let reply = self.client.put(
            &format!("/api/users/{}", segment(user)),
            &Value::Object(body),
        )?;
        if !reply.ok() {
            return Err(refused(reply.status, reply.reason()));
        }
        Ok(())
    }

    pub fn set_permissions(
        &self,
        user: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), Failure> {
        self.out.info(&format!(
            "Setting permissions for user \"{user}\" in vhost \"{}\" ...",
            self.vhost
        ));
        let reply = self.client.put(
            &format!("/api/permissions/{}/{}", self.vhost_path(), segment(user)),
            &json!({"configure": configure, "write": write, "read": read}),
        )?;
        if reply.ok() {
            return Ok(());
        }
        // The API answers 400 or 404 for a missing user or vhost: say which.
        self.user(user)?;
        self.require_vhost(self.vhost)?;
        Err(refused(reply.status, reply.reason()))
    }

    pub fn add_vhost(
        &self,
        name: &str,
        description: Option<String>,
        tags: Option<String>,
        default_queue_type: Option<String>,
    ) -> Result<(), Failure> {
        self.out.info(&format!("Adding vhost \"{name}\" ..."));
        let mut body = Map::new();
        if let Some(d) = description {
            body.insert("description".into(), Value::String(d));
        }
        if let Some(t) = tags {
            body.insert("tags".into(), Value::String(t));
        }
        if let Some(q) = default_queue_type {
            body.insert("default_queue_type".into(), Value::String(q));
        }
        let reply = self.client.put(
            &format!("/api/vhosts/{}", segment(name)),
            &Value::Object(body),
        )?;
        if !reply.ok() {
            return Err(refused(reply.status, reply.reason()));
        }
        Ok(())
    }

    pub fn delete_vhost(&self, name: &str) -> Result<(), Failure> {
        self.out.info(&format!("Deleting vhost \"{name}\" ..."));
        let reply = self
            .client
            .delete(&format!("/api/vhosts/{}", segment(name)), &[])?;
        match reply.status {
            404 => Err(no_such_vhost(name)),
            s if !(200..300).contains(&s) => Err(refused(s, reply.reason())),
            _ => Ok(()),
        }
    }

    pub fn set_policy(
        &self,
        name: &str,
        pattern: &str,
        definition: &str,
        priority: i64,
        apply_to: &str,
    ) -> Result<(), Failure> {
        self.out.info(&format!(
            "Setting policy \"{name}\" for pattern \"{pattern}\" to \"{definition}\" \
             with priority \"{priority}\" for vhost \"{}\" ...",
            self.vhost
        ));
        let parsed: Value = serde_json::from_str(definition).map_err(|e| {
            Failure::new(
                exit::DATAERR,
                format!("Error:\nJSON decoding error. Reason: {e}"),
            )
        })?;
        if !parsed.is_object() {
            return Err(Failure::new(
                exit::DATAERR,
                "Error:\nThe policy definition must be a JSON object, e.g. '{\"max-length\":100}'",
            ));
        }
        let reply = self.client.put(
            &format!("/api/policies/{}/{}", self.vhost_path(), segment(name)),
            &json!({"pattern": pattern, "definition": parsed, "priority": priority, "apply-to": apply_to}),
        )?;
        if reply.ok() {
            return Ok(());
        }
        if reply.status == 404 {
            self.require_vhost(self.vhost)?;
        }
        let reason = reply.reason();
        let text = if reason.starts_with("Validation failed") {
            reason
        } else {
            format!("Validation failed\n\n{reason}")
        };
        Err(Failure::new(
            code_for_status(reply.status),
            format!("Error:\n{text}"),
        ))
    }

    pub fn clear_policy(&self, name: &str) -> Result<(), Failure> {
        self.out.info(&format!(
            "Clearing policy \"{name}\" on vhost \"{}\" ...",
            self.vhost
        ));
        let reply = self.client.delete(
            &format!("/api/policies/{}/{}", self.vhost_path(), segment(name)),
            &[],
        )?;
        match reply.status {
            404 => Err(Failure::new(
                exit::DATAERR,
                "Error:\nParameter does not exist",
            )),
            s if !(200..300).contains(&s) => Err(refused(s, reply.reason())),
            _ => Ok(()),
        }
    }

    fn queue_path(&self, queue: &str) -> String {
        format!("/api/queues/{}/{}", self.vhost_path(), segment(queue))
    }

    fn no_such_queue(&self, queue: &str) -> Failure {
        Failure::new(
            exit::DATAERR,
            format!(
                "Error:\nQueue '{queue}' in vhost '{}' not found",
                self.vhost
            ),
        )
    }

    pub fn purge_queue(&self, queue: &str) -> Result<(), Failure> {
        self.out.info(&format!(
            "Purging queue '{queue}' in vhost '{}' ...",
            self.vhost
        ));
        let reply = self
            .client
            .delete(&format!("{}/contents", self.queue_path(queue)), &[])?;
        match reply.status {
            404 => Err(self.no_such_queue(queue)),
            s if !(200..300).contains(&s) => Err(refused(s, reply.reason())),
            _ => Ok(()),
        }
    }

    pub fn delete_queue(
        &self,
        queue: &str,
        if_empty: bool,
        if_unused: bool,
    ) -> Result<(), Failure> {
        self.out.info(&format!(
            "Deleting queue '{queue}' on vhost '{}' ...",
            self.vhost
        ));
        let current = self.client.get(&self.queue_path(queue))?;
        if current.status == 404 {
            return Err(self.no_such_queue(queue));
        }
        let ready = current
            .body
            .get("messages_ready")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let mut query = Vec::new();
        if if_empty {
            query.push("if-empty=true");
        }
        if if_unused {
            query.push("if-unused=true");
        }
        let path = if query.is_empty() {
            self.queue_path(queue)
        } else {
            format!("{}?{}", self.queue_path(queue), query.join("&"))
        };
        let reply = self.client.delete(&path, &[])?;
        match reply.status {
            404 => Err(self.no_such_queue(queue)),
            s if !(200..300).contains(&s) => Err(refused(s, reply.reason())),
            _ => {
                self.out.info(&format!(
                    "Queue was successfully deleted with {ready} ready messages"
                ));
                Ok(())
            }
        }
    }

    pub fn export_definitions(&self, path: &str) -> Result<(), Failure> {
        let to_stdout = path == "-";
        if !to_stdout {
            self.out.info(&format!(
                "Exporting definitions in JSON to a file at \"{path}\" ..."
            ));
        }
        let definitions = self.client.get_ok("/api/definitions")?;
        let text = definitions.to_string();
        if to_stdout {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{text}");
            return Ok(());
        }
        std::fs::write(path, text).map_err(|e| {
            Failure::new(
                exit::DATAERR,
                format!("Error:\nCannot write to file {path}: {e}"),
            )
        })
    }

    pub fn import_definitions(&self, path: &str) -> Result<(), Failure> {
        let text = if path == "-" {
            self.out
                .info("Importing definitions in JSON from standard input ...");
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map_err(|e| {
                Failure::new(
                    exit::DATAERR,
                    format!("Error:\nCannot read standard input: {e}"),
                )
            })?;
            text
        } else {
            self.out.info(&format!(
                "Importing definitions in JSON from a file at \"{path}\" ..."
            ));
            std::fs::read_to_string(path).map_err(|e| {
                Failure::new(
                    exit::DATAERR,
                    format!("Error:\nCannot read file {path}: {e}"),
                )
            })?
        };
        let definitions: Value = serde_json::from_str(&text).map_err(|e| {
            Failure::new(
                exit::DATAERR,
                format!("Error:\nJSON decoding error. Reason: {e}"),
            )
        })?;
        let reply = self.client.post("/api/definitions", &definitions)?;
        if !reply.ok() {
            return Err(refused(reply.status, reply.reason()));
        }
        self.out.info(
            "Successfully started definition import. This process is asynchronous and can take some time.",
        );
        Ok(())
    }

    pub fn close_connection(&self, name: &str, explanation: &str) -> Result<(), Failure> {
        self.out.info(&format!(
            "Closing connection {name}, reason: {explanation}..."
        ));
        let reply = self.client.delete(
            &format!("/api/connections/{}", segment(name)),
            &[("X-Reason", explanation)],
        )?;
        match reply.status {
            404 => Err(Failure::new(
                exit::DATAERR,
                format!(
                    "Error:\nConnection '{name}' not found (see 'warrenctl list_connections name')"
                ),
            )),
            s if !(200..300).contains(&s) => Err(refused(s, reply.reason())),
            _ => Ok(()),
        }
    }

    pub fn reload_tls_certificates(&self) -> Result<(), Failure> {
        self.out.info("Reloading TLS certificates ...");
        let reply = self
            .client
            .post("/api/warren/tls/reload", &Value::Object(Map::new()))?;
        if !reply.ok() {
            return Err(refused(reply.status, reply.reason()));
        }
        self.out
            .info("TLS certificates reloaded: new connections use them");
        Ok(())
    }
}

/// Polls GET /api/overview until the broker answers, a refused login (which waiting
/// will not cure), or `wait` has passed.
pub fn await_startup(target: &Target, wait: Duration) -> Result<(), Failure> {
    /// Between two attempts: short, as a starting broker is usually up within seconds.
    const POLL_INTERVAL: Duration = Duration::from_millis(200);
    /// One attempt's limit, so a broker that accepts and stalls is asked again.
    const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let client = Client::new(
            target.clone(),
            ATTEMPT_TIMEOUT.min(left).max(Duration::from_millis(100)),
        );
        let last = match client.get("/api/overview") {
            Ok(reply) if reply.ok() => return Ok(()),
            Ok(reply) => format!("HTTP status {}: {}", reply.status, reply.reason()),
            Err(f) if f.code == exit::NOPERM => return Err(f),
            Err(f) => f.message.lines().last().unwrap_or_default().to_string(),
        };
        if Instant::now() + POLL_INTERVAL >= deadline {
            return Err(Failure::new(
                exit::UNAVAILABLE,
                format!(
                    "Error: the broker at {target} did not start within {} seconds.\nLast attempt: {last}",
                    wait.as_secs()
                ),
            ));
        }
        thread::sleep(POLL_INTERVAL);
    }
}
