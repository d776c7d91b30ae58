// The tutorial's client, unchanged except: no `package com. company;` line,
// so it compiles standalone, and the port comes from args[0] (default 5000).
import java.io.*;
import java.net.Socket;
import java.util.Scanner;

public class client {
    public static void main(String[] args) {
        int port = args.length > 0 ? Integer.parseInt(args[0]) : 5000;
        Socket socket = null;
        InputStreamReader inputStreamReader = null;
        OutputStreamWriter outputStreamWriter = null;
        BufferedReader bufferedReader = null;
        BufferedWriter bufferedWriter = null;
        try {
            socket = new Socket("localhost", port);
            inputStreamReader = new InputStreamReader(socket.getInputStream());
            outputStreamWriter = new OutputStreamWriter(socket.getOutputStream());
            bufferedReader = new BufferedReader(inputStreamReader);
            bufferedWriter = new BufferedWriter(outputStreamWriter);
            Scanner scanner = new Scanner(System.in);
            while (true){
                String msgToSend = scanner.nextLine();
                bufferedWriter.write(msgToSend);
                bufferedWriter.newLine();
                bufferedWriter.flush();
                System.out.println("Server: " + bufferedReader.readLine());
                if (msgToSend.equalsIgnoreCase("BYE"))
                    break;
            }
        } catch (IOException e) {
            e.printStackTrace();
        } finally {
             try {
                  if (socket != null)
                  socket.close();
                  if (inputStreamReader != null)
                    inputStreamReader.close();
                  if (outputStreamWriter != null)
                      outputStreamWriter.close();
                  if (bufferedReader != null)
                      bufferedReader.close();
                  if (bufferedWriter != null)
                      bufferedWriter.close();
             } catch (IOException e) {
            e.printStackTrace();
          }
       }
    }
}
