<?php
// GearmanClient (php-gearman over libgearman) as a user script.
// usage: php client.php HOST:PORT ACTION FUNCTION [PAYLOAD] [key=value ...]
// PAYLOAD "@PATH" reads the payload from PATH.
// ACTION: do       doNormal/doHigh/doLow; prints "complete:<result>" or "fail rc=<code>"
//         tasks    addTask + runTasks; prints one line per callback, in arrival order:
//                  "data:<d>", "status:<n>/<d>", "exception:<e>", "fail", "complete:<r>"
//         background  doBackground/doHighBackground/doLowBackground; prints the handle
//         status   FUNCTION is a handle; prints "known running num den"
// options: uniq=U  priority=high|normal|low  out=PATH (write the result there instead)
//          timeout=MS
if ($argc < 4) {
    fwrite(STDERR, "usage: client.php HOST:PORT ACTION FUNCTION [PAYLOAD] [k=v...]\n");
    exit(2);
}
[$host, $port] = explode(':', $argv[1]);
$action = $argv[2];
$func = $argv[3];
$payload = $argv[4] ?? '';
if (strlen($payload) > 0 && $payload[0] === '@') {
    $payload = file_get_contents(substr($payload, 1));
}
$opt = [];
foreach (array_slice($argv, 5) as $kv) {
    [$k, $v] = explode('=', $kv, 2);
    $opt[$k] = $v;
}
$uniq = $opt['uniq'] ?? null;
$priority = $opt['priority'] ?? 'normal';

$client = new GearmanClient();
$client->addServer($host, (int)$port);
$client->setTimeout((int)($opt['timeout'] ?? 30000));

function result_out($opt, $result) {
    if (isset($opt['out'])) {
        file_put_contents($opt['out'], $result);
        echo "complete:@" . $opt['out'] . "\n";
    } else {
        echo "complete:$result\n";
    }
}

switch ($action) {
case 'do':
    $method = ['high' => 'doHigh', 'normal' => 'doNormal', 'low' => 'doLow'][$priority];
    $result = $client->$method($func, $payload, $uniq);
    if ($client->returnCode() == GEARMAN_SUCCESS) {
        result_out($opt, $result);
    } else {
        echo "fail rc=" . $client->returnCode() . "\n";
    }
    break;
case 'tasks':
    $client->setDataCallback(function ($task) { echo "data:" . $task->data() . "\n"; });
    $client->setStatusCallback(function ($task) {
        echo "status:" . $task->taskNumerator() . "/" . $task->taskDenominator() . "\n";
    });
    $client->setExceptionCallback(function ($task) { echo "exception:" . $task->data() . "\n"; });
    $client->setFailCallback(function ($task) { echo "fail\n"; });
    $client->setCompleteCallback(function ($task) use ($opt) { result_out($opt, $task->data()); });
    $method = ['high' => 'addTaskHigh', 'normal' => 'addTask', 'low' => 'addTaskLow'][$priority];
    $client->$method($func, $payload, null, $uniq);
    if (!$client->runTasks()) {
        echo "runTasks failed: " . $client->error() . "\n";
        exit(1);
    }
    break;
case 'background':
    $method = ['high' => 'doHighBackground', 'normal' => 'doBackground',
               'low' => 'doLowBackground'][$priority];
    $handle = $client->$method($func, $payload, $uniq);
    if ($client->returnCode() != GEARMAN_SUCCESS) {
        fwrite(STDERR, "submit failed: " . $client->error() . "\n");
        exit(1);
    }
    echo "$handle\n";
    break;
case 'status':
    $st = $client->jobStatus($func);
    echo ($st[0] ? 1 : 0) . " " . ($st[1] ? 1 : 0) . " " . $st[2] . " " . $st[3] . "\n";
    break;
default:
    fwrite(STDERR, "unknown action $action\n");
    exit(2);
}
