<?php
// GearmanWorker (php-gearman over libgearman) serving one function until killed.
// usage: php worker.php HOST:PORT FUNCTION MODE [ARG]
// MODE: reverse | log (append payload + "\n" to ARG, return "logged") |
//       stream (sendData for each comma-separated piece, return "done") |
//       status (sendStatus 1/2, wait for file ARG, return "finished") |
//       fail (sendFail) | exception (sendException "boom") |
//       hang (write own pid to ARG, then sleep: for kill tests)
if ($argc < 4) {
    fwrite(STDERR, "usage: worker.php HOST:PORT FUNCTION MODE [ARG]\n");
    exit(2);
}
[$host, $port] = explode(':', $argv[1]);
$func = $argv[2];
$mode = $argv[3];
$arg = $argv[4] ?? '';

function wait_file($path) {
    for ($i = 0; $i < 3000; $i++) {  // 30 s at most
        if (file_exists($path)) return true;
        usleep(10000);
    }
    return false;
}

$modes = [
    'reverse' => fn($job) => strrev($job->workload()),
    'log' => function ($job) use ($arg) {
        file_put_contents($arg, $job->workload() . "\n", FILE_APPEND | LOCK_EX);
        return 'logged';
    },
    'stream' => function ($job) {
        foreach (explode(',', $job->workload()) as $piece) {
            $job->sendData($piece);
        }
        return 'done';
    },
    'status' => function ($job) use ($arg) {
        $job->sendStatus(1, 2);
        wait_file($arg);
        return 'finished';
    },
    'fail' => function ($job) {
        $job->sendFail();
        return GEARMAN_WORK_FAIL;
    },
    'exception' => function ($job) {
        $job->sendException('boom');
        return GEARMAN_WORK_EXCEPTION;
    },
    'hang' => function ($job) use ($arg) {
        file_put_contents("$arg.tmp", getmypid() . "\n");
        rename("$arg.tmp", $arg);
        sleep(60);
        return 'woke up';
    },
];
if (!isset($modes[$mode])) {
    fwrite(STDERR, "unknown mode $mode\n");
    exit(2);
}
$worker = new GearmanWorker();
$worker->addServer($host, (int)$port);
$worker->addFunction($func, $modes[$mode]);
while ($worker->work() || $worker->returnCode() == GEARMAN_IO_WAIT
       || $worker->returnCode() == GEARMAN_NO_JOBS) {
    if ($worker->returnCode() != GEARMAN_SUCCESS && $worker->returnCode() != GEARMAN_IO_WAIT
        && $worker->returnCode() != GEARMAN_NO_JOBS) {
        break;
    }
}
fwrite(STDERR, "worker stopped: " . $worker->error() . "\n");
exit(1);
